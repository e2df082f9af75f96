// /forget: asks first; "Delete everything" deletes, "Keep" does nothing. The question turns into the answer, so its
// buttons cannot be pressed twice.
import { SlashCommandBuilder } from 'discord.js';
import { forget as forgetAll, forgetAsk, forgetKept } from '../../shared/forget.ts';
import type { SlashCommand } from '../context.ts';
import { localizedCommand } from '../localize.ts';

export const forget: SlashCommand = {
  definition: localizedCommand(new SlashCommandBuilder(), 'forget'),
  ephemeral: true,
  execute: async (_deps, _interaction, person) => forgetAsk(person),
  buttons: {
    actions: ['forget_yes', 'forget_no'],
    answer: 'update',
    execute: async ({ conversation }, action, person) => (action === 'forget_yes' ? forgetAll(conversation, person) : forgetKept(person)),
  },
};
