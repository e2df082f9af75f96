// /train [photo1 … photo10]: adds the attached photos (run it again to add more); without any, explains what to send.
import { SlashCommandBuilder } from 'discord.js';
import { incomingAttachment, type SlashCommand } from '../context.ts';

export const MAX_ATTACHMENTS = 10;

const definition = new SlashCommandBuilder()
  .setName('train')
  .setDescription('Send photos of yourself to train your portrait model')
  .setDescriptionLocalizations({ ru: 'Отправить свои фото для обучения модели' });
for (let n = 1; n <= MAX_ATTACHMENTS; n++) {
  definition.addAttachmentOption((o) => o.setName(`photo${n}`).setDescription(`Photo ${n}`).setDescriptionLocalizations({ ru: `Фото ${n}` }));
}

export const train: SlashCommand = {
  definition,
  ephemeral: true,
  async execute({ conversation }, interaction, person) {
    const attachments = Array.from({ length: MAX_ATTACHMENTS }, (_, i) => interaction.options.getAttachment(`photo${i + 1}`)).filter((a) => a !== null);
    if (attachments.length === 0) return conversation.openTraining(person);
    return conversation.addPhotos(person, attachments.map(incomingAttachment), false);
  },
};
