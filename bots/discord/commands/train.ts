// /train [photo1 … photo10]: adds the attached photos (run it again to add more); without any, explains what to send.
// Its buttons: "Train now", and "These photos are of me" before the first training.
import { SlashCommandBuilder } from 'discord.js';
import { addPhotos, consent, openTraining, trainNow } from '../../shared/training.ts';
import { incomingAttachment, type SlashCommand } from '../context.ts';
import { localizedCommand, localizedOption } from '../localize.ts';

export const MAX_ATTACHMENTS = 10;

const definition = localizedCommand(new SlashCommandBuilder(), 'train');
for (let n = 1; n <= MAX_ATTACHMENTS; n++) definition.addAttachmentOption((o) => localizedOption(o, 'train', 'photo', { n }, `photo${n}`));

export const train: SlashCommand = {
  definition,
  ephemeral: true,
  async execute({ conversation }, interaction, person) {
    const attachments = Array.from({ length: MAX_ATTACHMENTS }, (_, i) => interaction.options.getAttachment(`photo${i + 1}`)).filter((a) => a !== null);
    if (attachments.length === 0) return openTraining(conversation, person);
    return addPhotos(conversation, person, attachments.map(incomingAttachment), false);
  },
  buttons: {
    actions: ['train_now', 'consent_yes'],
    answer: 'private',
    execute: ({ conversation }, action, person) => (action === 'consent_yes' ? consent(conversation, person) : trainNow(conversation, person)),
  },
};
