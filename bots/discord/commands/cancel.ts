// /cancel
import { SlashCommandBuilder } from 'discord.js';
import type { SlashCommand } from '../context.ts';

export const cancel: SlashCommand = {
  definition: new SlashCommandBuilder().setName('cancel').setDescription('Stop your running job').setDescriptionLocalizations({ ru: 'Остановить текущую задачу' }),
  ephemeral: true,
  execute: ({ conversation }, _interaction, person) => conversation.cancel(person),
};
