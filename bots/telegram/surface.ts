// The notifier's Telegram side: edit the status message, send results as a photo or an album.
import { TelegramError, type Telegram } from 'telegraf';
import type { ChatSurface, OutgoingImage } from '../shared/notifier.ts';
import { retryableTelegramError, type TelegramTarget } from './context.ts';

export class TelegramSurface implements ChatSurface<TelegramTarget> {
  readonly platform = 'telegram' as const;
  constructor(private readonly telegram: Telegram) {}

  async edit(target: TelegramTarget, text: string): Promise<void> {
    try {
      await this.telegram.editMessageText(target.chatId, target.messageId, undefined, text);
    } catch (error) {
      // Same text as shown already: nothing to do.
      if (error instanceof TelegramError && /message is not modified/.test(error.description)) return;
      throw error;
    }
  }

  async sendImages(target: TelegramTarget, images: OutgoingImage[], caption: string): Promise<void> {
    // As a JSON string: telegraf 4.16 drops object-valued reply_parameters from multipart uploads (it only
    // serializes a few known fields), and these calls upload files.
    const reply = { reply_parameters: JSON.stringify({ message_id: target.messageId, allow_sending_without_reply: true }) as never };
    // An album holds 2 to 10 pictures; a single one goes as a plain photo.
    for (let start = 0; start < images.length; start += 10) {
      const chunk = images.slice(start, start + 10);
      if (chunk.length === 1) {
        await this.telegram.sendPhoto(target.chatId, { source: chunk[0]!.data, filename: chunk[0]!.name }, { caption: start === 0 ? caption : undefined, ...reply });
        continue;
      }
      await this.telegram.sendMediaGroup(
        target.chatId,
        chunk.map((image, i) => ({ type: 'photo' as const, media: { source: image.data, filename: image.name }, caption: start + i === 0 ? caption : undefined })),
        reply,
      );
    }
  }

  async sendDocuments(target: TelegramTarget, files: OutgoingImage[], caption: string): Promise<void> {
    const reply = { reply_parameters: JSON.stringify({ message_id: target.messageId, allow_sending_without_reply: true }) as never };
    if (files.length === 1) {
      await this.telegram.sendDocument(target.chatId, { source: files[0]!.data, filename: files[0]!.name }, { caption: caption || undefined, ...reply });
      return;
    }
    await this.telegram.sendMediaGroup(
      target.chatId,
      files.map((file, i) => ({ type: 'document' as const, media: { source: file.data, filename: file.name }, caption: i === files.length - 1 && caption ? caption : undefined })),
      reply,
    );
  }

  retryable(error: unknown): boolean {
    return retryableTelegramError(error);
  }

  retryAfterMs(error: unknown): number | undefined {
    const seconds = error instanceof TelegramError ? error.parameters?.retry_after : undefined;
    return typeof seconds === 'number' ? seconds * 1000 : undefined;
  }
}
