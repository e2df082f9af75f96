// /forget: asks first; the buttons are handled by the dispatcher.
import { SlashCommandBuilder } from 'discord.js';
import type { SlashCommand } from '../context.ts';

export const forget: SlashCommand = {
  definition: new SlashCommandBuilder().setName('forget').setDescription('Delete everything about you').setDescriptionLocalizations({ ru: 'Удалить всё о вас' }),
  ephemeral: true,
  execute: async ({ conversation }, _interaction, person) => conversation.forgetAsk(person),
};
