// /pose image: prompt:
import { SlashCommandBuilder } from 'discord.js';
import { pose as paintInPose } from '../../shared/pose.ts';
import { incomingAttachment, type SlashCommand } from '../context.ts';
import { localizedCommand, localizedOption } from '../localize.ts';

export const pose: SlashCommand = {
  definition: localizedCommand(new SlashCommandBuilder(), 'pose')
    .addAttachmentOption((o) => localizedOption(o, 'pose', 'image').setRequired(true))
    .addStringOption((o) => localizedOption(o, 'pose', 'prompt')),
  ephemeral: false,
  async execute({ conversation }, interaction, person) {
    const image = interaction.options.getAttachment('image');
    return paintInPose(conversation, person, image ? incomingAttachment(image) : undefined, interaction.options.getString('prompt') ?? '');
  },
};
