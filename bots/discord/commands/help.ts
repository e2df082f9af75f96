// /help
import { SlashCommandBuilder } from 'discord.js';
import { help as helpText } from '../../shared/help.ts';
import type { SlashCommand } from '../context.ts';
import { localizedCommand } from '../localize.ts';

export const help: SlashCommand = {
  definition: localizedCommand(new SlashCommandBuilder(), 'help'),
  ephemeral: true,
  execute: async ({ conversation }, _interaction, person) => helpText(conversation, person),
};
