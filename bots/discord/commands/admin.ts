// /admin command: (stats · pause|resume train|generate|all · ban|unban <id> · quota <id> <limit> <n|default>)
// Hidden from members without Administrator in servers (default_member_permissions 0); and only the accounts in
// ADMIN_DISCORD_IDS get an answer: anyone else gets the usual "I didn't understand" (ephemeral), nothing more.
import { SlashCommandBuilder } from 'discord.js';
import type { SlashCommand } from '../context.ts';
import { AdminCommands } from '../../shared/admin.ts';
import { localizedCommand, localizedOption } from '../localize.ts';

export const admin: SlashCommand = {
  definition: localizedCommand(new SlashCommandBuilder(), 'admin')
    .setDefaultMemberPermissions(0)
    .addStringOption((o) => localizedOption(o, 'admin', 'command')),
  ephemeral: true,
  async execute({ app }, interaction, person) {
    const commands = new AdminCommands(app);
    if (!commands.isAdmin('discord', interaction.user.id)) return { text: person.t('chat.fallback') };
    return commands.run(person, interaction.options.getString('command') ?? '');
  },
};
