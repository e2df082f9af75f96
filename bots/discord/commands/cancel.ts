// /cancel
import { SlashCommandBuilder } from 'discord.js';
import { cancel as cancelJob } from '../../shared/status.ts';
import type { SlashCommand } from '../context.ts';
import { localizedCommand } from '../localize.ts';

export const cancel: SlashCommand = {
  definition: localizedCommand(new SlashCommandBuilder(), 'cancel'),
  ephemeral: true,
  execute: ({ conversation }, _interaction, person) => cancelJob(conversation, person),
};
