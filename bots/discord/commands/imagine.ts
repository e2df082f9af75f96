// /imagine prompt: style:
import { SlashCommandBuilder } from 'discord.js';
import type { SlashCommand } from '../context.ts';
import { stylePresets } from '../../../src/services/styles.ts';

export const imagine: SlashCommand = {
  definition: new SlashCommandBuilder()
    .setName('imagine')
    .setDescription('A portrait of you')
    .setDescriptionLocalizations({ ru: 'Ваш портрет' })
    // Optional: a style alone is a whole request.
    .addStringOption((o) => o.setName('prompt').setDescription('What to paint, in English, e.g. “me as an astronaut”').setDescriptionLocalizations({ ru: 'Что нарисовать (по-английски)' }))
    .addStringOption((o) => o
      .setName('style').setDescription('A ready-made style (works in any language)').setDescriptionLocalizations({ ru: 'Готовый стиль (на любом языке)' })
      .addChoices(...stylePresets.map((s) => ({ name: s.names.en, name_localizations: { ru: s.names.ru }, value: s.id })))),
  ephemeral: false,
  execute: ({ conversation }, interaction, person) =>
    conversation.imagine(person, interaction.options.getString('prompt') ?? '', interaction.options.getString('style') ?? undefined),
};
