// /link [code]: without a code, issues one (shown only to the person); with one, joins the accounts.
import { SlashCommandBuilder } from 'discord.js';
import type { SlashCommand } from '../context.ts';

export const link: SlashCommand = {
  definition: new SlashCommandBuilder()
    .setName('link')
    .setDescription('Use the same account on Telegram and Discord')
    .setDescriptionLocalizations({ ru: 'Один аккаунт в Telegram и Discord' })
    .addStringOption((o) => o.setName('code').setDescription('A code from /link on the other platform').setDescriptionLocalizations({ ru: 'Код из /link на другой платформе' })),
  ephemeral: true,
  execute: ({ conversation }, interaction, person) => conversation.link(person, interaction.options.getString('code') ?? ''),
};
