// /pose image: prompt:
import { SlashCommandBuilder } from 'discord.js';
import { incomingAttachment, type SlashCommand } from '../context.ts';

export const pose: SlashCommand = {
  definition: new SlashCommandBuilder()
    .setName('pose')
    .setDescription('You, in the pose of a picture')
    .setDescriptionLocalizations({ ru: 'Вы в позе с картинки' })
    .addAttachmentOption((o) => o.setName('image').setDescription('A picture of the pose').setDescriptionLocalizations({ ru: 'Картинка с позой' }).setRequired(true))
    .addStringOption((o) => o.setName('prompt').setDescription('Optional: what else to paint').setDescriptionLocalizations({ ru: 'Необязательно: что ещё нарисовать' })),
  ephemeral: false,
  async execute({ conversation }, interaction, person) {
    const image = interaction.options.getAttachment('image');
    return conversation.pose(person, image ? incomingAttachment(image) : undefined, interaction.options.getString('prompt') ?? '');
  },
};
