// /imagine prompt:
import { SlashCommandBuilder } from 'discord.js';
import type { SlashCommand } from '../context.ts';

export const imagine: SlashCommand = {
  definition: new SlashCommandBuilder()
    .setName('imagine')
    .setDescription('A portrait of you')
    .setDescriptionLocalizations({ ru: 'Ваш портрет' })
    .addStringOption((o) => o.setName('prompt').setDescription('What to paint, e.g. “me as an astronaut”').setDescriptionLocalizations({ ru: 'Что нарисовать' }).setRequired(true)),
  ephemeral: false,
  execute: ({ conversation }, interaction, person) => conversation.imagine(person, interaction.options.getString('prompt', true)),
};
