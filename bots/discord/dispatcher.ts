// The one interactionCreate handler: acknowledges at once (Discord's 3-second deadline), runs the command or button,
// and turns any failure into an ephemeral message without internals.
import { MessageFlags, type ButtonInteraction, type Interaction } from 'discord.js';
import { pickLocale, translator } from '../shared/i18n/index.ts';
import { apologyFor } from '../shared/error-text.ts';
import type { ButtonAction, Person } from '../shared/conversation.ts';
import { answer, personOf, type DiscordDeps } from './context.ts';
import { buttonHandler, commands } from './commands/index.ts';
import { AdminCommands } from '../shared/admin.ts';

export function interactionDispatcher(deps: DiscordDeps) {
  const redis = deps.app.queues.connection;
  const admin = new AdminCommands(deps.app);
  return async (interaction: Interaction): Promise<void> => {
    let person: Person | undefined;
    try {
      // A resumed gateway session can replay an event: the first process to see an interaction id claims it.
      const key = `${deps.app.config.queuePrefix}:discord:interaction:${interaction.id}`;
      if ((await redis.set(key, '1', 'EX', 3600, 'NX')) !== 'OK') return;
      if (interaction.isChatInputCommand()) {
        const command = commands.get(interaction.commandName);
        if (!command) return;
        // Acknowledge before any database or download work.
        await interaction.deferReply(command.ephemeral ? { flags: MessageFlags.Ephemeral } : {});
        const who = await personOf(deps, interaction);
        person = who;
        // A banned person's every command gets one clear answer.
        const refusal = admin.bannedReply('discord', interaction.user.id, who);
        await answer(deps, interaction, person, refusal ?? await command.execute(deps, interaction, person));
      } else if (interaction.isButton()) {
        const refusal = admin.bannedReply('discord', interaction.user.id, await deps.conversation.existingPerson('discord', interaction.user.id));
        if (refusal) await interaction.reply({ content: refusal.text, flags: MessageFlags.Ephemeral });
        else person = await onButton(deps, interaction);
      }
    } catch (error) {
      deps.logger.error({ err: error, interaction: interaction.id }, 'interaction failed');
      await apologize(interaction, (person?.t ?? translator(pickLocale(interaction.locale)))(apologyFor(error))).catch((e: unknown) => deps.logger.warn({ err: e }, 'could not report the failure'));
    }
  };
}

/** A button runs the handler of the command whose answer it sits under (bots/discord/commands). */
async function onButton(deps: DiscordDeps, interaction: ButtonInteraction): Promise<Person | undefined> {
  // `action` or `action:<owner's Discord id>`; style actions (`style:<id>`) carry no owner.
  const [, action, owner] = /^(.*?)(?::(\d{5,25}))?$/.exec(interaction.customId) as unknown as [string, ButtonAction, string | undefined];
  const handler = buttonHandler(action);
  if (!handler) return undefined;
  if (owner && owner !== interaction.user.id) {
    // Someone else's button (a message shown in a channel): it does nothing, and only the presser is told.
    const person = await personOf(deps, interaction);
    await interaction.reply({ content: person.t('chat.not_yours'), flags: MessageFlags.Ephemeral });
    return person;
  }
  if (handler.answer === 'update') {
    await interaction.deferUpdate();
    const person = await personOf(deps, interaction);
    const reply = await handler.execute(deps, action, person);
    await interaction.editReply({ content: reply.text, components: [] });
    return person;
  }
  // Acknowledge before any database work.
  await interaction.deferReply(handler.answer === 'private' ? { flags: MessageFlags.Ephemeral } : {});
  const person = await personOf(deps, interaction);
  await answer(deps, interaction, person, await handler.execute(deps, action, person));
  return person;
}

async function apologize(interaction: Interaction, text: string) {
  if (!interaction.isRepliable()) return;
  if (!interaction.deferred && !interaction.replied) {
    await interaction.reply({ content: text, flags: MessageFlags.Ephemeral });
  } else {
    await interaction.followUp({ content: text, flags: MessageFlags.Ephemeral });
  }
}
