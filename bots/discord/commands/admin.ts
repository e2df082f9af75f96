// /admin command: (stats · pause|resume train|generate|all · ban|unban <id> · quota <id> <limit> <n|default>)
// Hidden from members without Administrator in servers (default_member_permissions 0); and only the accounts in
// ADMIN_DISCORD_IDS get an answer: anyone else gets the usual "I didn't understand" (ephemeral), nothing more.
import { SlashCommandBuilder } from 'discord.js';
import type { SlashCommand } from '../context.ts';
import { AdminCommands } from '../../shared/admin.ts';

export const admin: SlashCommand = {
  definition: new SlashCommandBuilder()
    .setName('admin')
    .setDescription('Operator commands')
    .setDescriptionLocalizations({ ru: 'Команды оператора' })
    .setDefaultMemberPermissions(0)
    .addStringOption((o) => o
      .setName('command').setDescription('stats, pause train, resume all, ban <id>, unban <id>, quota <id> generations 50')
      .setDescriptionLocalizations({ ru: 'stats, pause train, resume all, ban <id>, unban <id>, quota <id> generations 50' })),
  ephemeral: true,
  async execute({ app }, interaction, person) {
    const commands = new AdminCommands(app);
    if (!commands.isAdmin('discord', interaction.user.id)) return { text: person.t('chat.fallback') };
    return commands.run(person, interaction.options.getString('command') ?? '');
  },
};
