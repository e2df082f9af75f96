// /lang language:
import { SlashCommandBuilder } from 'discord.js';
import { catalogues, locales } from '../../shared/i18n/index.ts';
import type { SlashCommand } from '../context.ts';

export const lang: SlashCommand = {
  definition: new SlashCommandBuilder()
    .setName('lang')
    .setDescription('Language of my answers')
    .setDescriptionLocalizations({ ru: 'Язык ответов' })
    .addStringOption((o) => o.setName('language').setDescription('Language').setDescriptionLocalizations({ ru: 'Язык' }).setRequired(true)
      .addChoices(...locales.map((l) => ({ name: catalogues[l]['lang.name'], value: l })))),
  ephemeral: true,
  execute: ({ conversation }, interaction, person) => conversation.lang(person, interaction.options.getString('language', true)),
};
