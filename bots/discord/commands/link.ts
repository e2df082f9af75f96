// /link [code]: without a code, issues one (shown only to the person); with one, joins the accounts.
import { SlashCommandBuilder } from 'discord.js';
import { link as linkAccounts } from '../../shared/account.ts';
import type { SlashCommand } from '../context.ts';
import { localizedCommand, localizedOption } from '../localize.ts';

export const link: SlashCommand = {
  definition: localizedCommand(new SlashCommandBuilder(), 'link')
    .addStringOption((o) => localizedOption(o, 'link', 'code')),
  ephemeral: true,
  execute: ({ conversation }, interaction, person) => linkAccounts(conversation, person, interaction.options.getString('code') ?? ''),
};
