// /status
import { SlashCommandBuilder } from 'discord.js';
import type { SlashCommand } from '../context.ts';

export const status: SlashCommand = {
  definition: new SlashCommandBuilder().setName('status').setDescription('Your photos, model and jobs').setDescriptionLocalizations({ ru: 'Ваши фото, модель и задачи' }),
  ephemeral: true,
  execute: ({ conversation }, _interaction, person) => conversation.status(person),
};
