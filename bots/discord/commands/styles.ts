// /styles, and a tap on a style under it: a public portrait, like /imagine, of whoever tapped.
import { SlashCommandBuilder } from 'discord.js';
import { imagine, styles as styleList } from '../../shared/imagine.ts';
import type { SlashCommand } from '../context.ts';
import { localizedCommand } from '../localize.ts';

export const styles: SlashCommand = {
  definition: localizedCommand(new SlashCommandBuilder(), 'styles'),
  ephemeral: true,
  execute: async (_deps, _interaction, person) => styleList(person),
  buttons: {
    actions: ['style:'],
    answer: 'public',
    execute: ({ conversation }, action, person) => imagine(conversation, person, '', action.slice('style:'.length)),
  },
};
