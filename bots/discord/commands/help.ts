// /help
import { SlashCommandBuilder } from 'discord.js';
import type { SlashCommand } from '../context.ts';

export const help: SlashCommand = {
  definition: new SlashCommandBuilder().setName('help').setDescription('What I can do').setDescriptionLocalizations({ ru: 'Что я умею' }),
  ephemeral: true,
  execute: async ({ conversation }, _interaction, person) => conversation.help(person),
};
