// /lang language:
import { SlashCommandBuilder } from 'discord.js';
import { lang as setLanguage } from '../../shared/account.ts';
import { catalogues, locales } from '../../shared/i18n/index.ts';
import type { SlashCommand } from '../context.ts';
import { localizedCommand, localizedOption } from '../localize.ts';

export const lang: SlashCommand = {
  definition: localizedCommand(new SlashCommandBuilder(), 'lang')
    // Each language is named in itself, whatever the reader's language.
    .addStringOption((o) => localizedOption(o, 'lang', 'language').setRequired(true)
      .addChoices(...locales.map((l) => ({ name: catalogues[l]['lang.name'], value: l })))),
  ephemeral: true,
  execute: ({ conversation }, interaction, person) => setLanguage(conversation, person, interaction.options.getString('language', true)),
};
