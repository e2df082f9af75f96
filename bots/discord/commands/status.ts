// /status
import { SlashCommandBuilder } from 'discord.js';
import { status as statusOf } from '../../shared/status.ts';
import type { SlashCommand } from '../context.ts';
import { localizedCommand } from '../localize.ts';

export const status: SlashCommand = {
  definition: localizedCommand(new SlashCommandBuilder(), 'status'),
  ephemeral: true,
  execute: ({ conversation }, _interaction, person) => statusOf(conversation, person),
};
