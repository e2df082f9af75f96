// What every Discord command shares: the conversation, the notifier, and how a Reply becomes an interaction answer.
import {
  ActionRowBuilder, ButtonBuilder, ButtonStyle, MessageFlags,
  type Attachment, type ButtonInteraction, type ChatInputCommandInteraction, type SlashCommandOptionsOnlyBuilder,
} from 'discord.js';
import type { Logger } from 'pino';
import type { App } from '../../src/app.ts';
import type { ButtonAction, Conversation, IncomingFile, Person, Reply, ResolvedPerson } from '../shared/conversation.ts';
import type { JobNotifier } from '../shared/notifier.ts';

/** An interaction's reply stays editable through its token for 15 minutes; we stop a minute early. */
export const INTERACTION_TOKEN_LIFE_MS = 14 * 60 * 1000;

export type DiscordTarget = { applicationId: string; token: string; channelId: string; userId: string; expiresAt: number };

export interface DiscordDeps {
  app: App;
  conversation: Conversation;
  notifier: JobNotifier<DiscordTarget>;
  logger: Logger;
}

type Answerable = ChatInputCommandInteraction | ButtonInteraction;

export interface SlashCommand {
  definition: SlashCommandOptionsOnlyBuilder;
  /** Private answers (link codes, status, the photo session) are deferred as ephemeral; portraits are public. */
  ephemeral: boolean;
  execute(deps: DiscordDeps, interaction: ChatInputCommandInteraction, person: Person): Promise<Reply>;
  /** The buttons under this command's answers. */
  buttons?: ButtonHandler;
}

export interface ButtonHandler {
  /** The actions handled; one ending in ':' takes every action it begins (`style:` for `style:<id>`). */
  actions: readonly string[];
  /**
   * `public`: a new message everyone in the channel sees; `private`: a new one only the presser sees; `update`: the
   * pressed message turns into the answer and loses its buttons.
   */
  answer: 'public' | 'private' | 'update';
  execute(deps: DiscordDeps, action: ButtonAction, person: Person): Promise<Reply>;
}

export async function personOf(deps: DiscordDeps, interaction: Answerable): Promise<ResolvedPerson> {
  return deps.conversation.person('discord', interaction.user.id, {
    displayName: interaction.user.globalName ?? interaction.user.username,
    locale: interaction.locale,
  });
}

/** Buttons carry the Discord id of the person they were made for (`action:id`): nobody else can use them. */
export function components(reply: Reply, owner?: string) {
  if (!reply.buttons?.length) return [];
  // A style button paints whoever taps it; every other button carries its owner's id, so only they can press it.
  const buttons = reply.buttons.map((b) => new ButtonBuilder()
    .setCustomId(owner && !b.action.startsWith('style:') ? `${b.action}:${owner}` : b.action)
    .setLabel(b.label)
    .setStyle(b.danger ? ButtonStyle.Danger : b.action === 'train_now' ? ButtonStyle.Primary : ButtonStyle.Secondary));
  // Discord takes at most five buttons a row.
  const rows: Array<ActionRowBuilder<ButtonBuilder>> = [];
  for (let i = 0; i < buttons.length; i += 5) rows.push(new ActionRowBuilder<ButtonBuilder>().addComponents(buttons.slice(i, i + 5)));
  return rows;
}

/**
 * Shows a Reply in an interaction that was deferred. A refusal is shown to the person only: a public deferral is
 * replaced by an ephemeral follow-up. A reply that queued a job becomes its status message.
 */
export async function answer(deps: DiscordDeps, interaction: Answerable, person: Person, reply: Reply): Promise<void> {
  if (reply.error && !interaction.ephemeral) {
    await interaction.deleteReply();
    await interaction.followUp({ content: reply.text, flags: MessageFlags.Ephemeral });
    return;
  }
  await interaction.editReply({ content: reply.text, components: components(reply, interaction.user.id) });
  // For the person only; the status reply is edited with progress, so the note can't live there.
  if (reply.notice) {
    await interaction.followUp({ content: reply.notice, flags: MessageFlags.Ephemeral })
      .catch((error: unknown) => deps.logger.warn({ err: error }, 'sending a notice failed'));
  }
  if (reply.job) {
    await deps.notifier.track(reply.job.id, person.userId, person.locale, {
      applicationId: interaction.applicationId,
      token: interaction.token,
      channelId: interaction.channelId ?? '',
      userId: interaction.user.id,
      expiresAt: interaction.createdTimestamp + INTERACTION_TOKEN_LIFE_MS,
    }, reply.job.preview);
  }
}

export const incomingAttachment = (attachment: Attachment): IncomingFile => ({
  name: attachment.name,
  size: attachment.size,
  async download() {
    const response = await fetch(attachment.url);
    if (!response.ok) throw new Error(`attachment download answered ${response.status}`);
    return Buffer.from(await response.arrayBuffer());
  },
});
