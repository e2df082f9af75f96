// /styles
import { SlashCommandBuilder } from 'discord.js';
import type { SlashCommand } from '../context.ts';

export const styles: SlashCommand = {
  definition: new SlashCommandBuilder().setName('styles').setDescription('Ready-made portrait styles').setDescriptionLocalizations({ ru: 'Готовые стили портретов' }),
  ephemeral: true,
  execute: async ({ conversation }, _interaction, person) => conversation.styles(person),
};
