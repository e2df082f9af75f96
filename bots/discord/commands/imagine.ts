// /imagine prompt: style:
import { SlashCommandBuilder } from 'discord.js';
import { imagine as paint } from '../../shared/imagine.ts';
import { stylePresets } from '../../../src/services/styles.ts';
import type { SlashCommand } from '../context.ts';
import { localizedCommand, localizedOption } from '../localize.ts';

export const imagine: SlashCommand = {
  definition: localizedCommand(new SlashCommandBuilder(), 'imagine')
    // Optional: a style alone is a whole request.
    .addStringOption((o) => localizedOption(o, 'imagine', 'prompt'))
    .addStringOption((o) => localizedOption(o, 'imagine', 'style')
      .addChoices(...stylePresets.map((s) => ({ name: s.names.en, name_localizations: { ru: s.names.ru }, value: s.id })))),
  ephemeral: false,
  execute: ({ conversation }, interaction, person) =>
    paint(conversation, person, interaction.options.getString('prompt') ?? '', interaction.options.getString('style') ?? undefined),
};
