// The notifier's Discord side: while the interaction token lives, edit its reply and post results as a follow-up;
// after that (15 minutes), post new messages in a DM instead.
import { DiscordAPIError, Routes, type Client } from 'discord.js';
import type { RawFile, REST } from '@discordjs/rest';
import type { ChatSurface, OutgoingImage } from '../shared/notifier.ts';
import type { DiscordTarget } from './context.ts';

export class DiscordSurface implements ChatSurface<DiscordTarget> {
  readonly platform = 'discord' as const;
  /** `client.rest` for the interaction token's webhook routes; `botRest` (under the global limit) for DMs. */
  constructor(private readonly client: Client, private readonly botRest: REST) {}

  async edit(target: DiscordTarget, text: string): Promise<void> {
    if (Date.now() < target.expiresAt) {
      await this.client.rest.patch(Routes.webhookMessage(target.applicationId, target.token, '@original'), { body: { content: text }, auth: false });
    } else {
      await this.direct(target, { content: text });
    }
  }

  async sendImages(target: DiscordTarget, images: OutgoingImage[], caption: string): Promise<void> {
    const files: RawFile[] = images.map((image) => ({ name: image.name, data: image.data, contentType: 'image/png' }));
    const body = { content: caption, attachments: files.map((f, id) => ({ id, filename: f.name })) };
    if (Date.now() < target.expiresAt) {
      await this.client.rest.post(Routes.webhook(target.applicationId, target.token), { body, files, auth: false, query: new URLSearchParams({ wait: 'true' }) });
    } else {
      await this.direct(target, body, files);
    }
  }

  retryable(error: unknown): boolean {
    return !(error instanceof DiscordAPIError) || error.status === 429 || error.status >= 500;
  }

  private async direct(target: DiscordTarget, body: Record<string, unknown>, files?: RawFile[]) {
    const channel = (await this.botRest.post(Routes.userChannels(), { body: { recipient_id: target.userId } })) as { id: string };
    await this.botRest.post(Routes.channelMessages(channel.id), { body, files });
  }
}
