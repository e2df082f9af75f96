// The process logger: pino, with every configured secret scrubbed from each line before it is written. Chat client
// errors carry request URLs, and Telegram's Bot API puts the token in the path (`/bot<token>/getMe`), so redacting
// known fields is not enough: the secret's text itself is replaced wherever it appears.
import pino, { type DestinationStream, type Logger } from 'pino';
import type { Config } from './config/index.ts';

/** The values that must never reach a log: chat tokens, the webhook secret, passwords in the service URLs. */
export function secretsOf(config: Config): string[] {
  const passwords = [config.databaseUrl, config.redisUrl].map((url) => {
    try {
      return decodeURIComponent(new URL(url).password);
    } catch {
      return '';
    }
  });
  return [config.telegram.token, config.discord.token, config.telegram.webhook.secret, config.storage.s3.secretAccessKey, ...passwords]
    .filter((s): s is string => typeof s === 'string' && s.length >= 4);
}

export function createLogger(config: Config, destination?: DestinationStream): Logger {
  const secrets = secretsOf(config);
  // JSON-escaped too, as a secret inside a logged string appears in the line.
  const forms = [...new Set(secrets.flatMap((s) => [s, JSON.stringify(s).slice(1, -1), encodeURIComponent(s)]))];
  const options: pino.LoggerOptions = {
    level: config.logLevel,
    hooks: { streamWrite: (line) => forms.reduce((out, secret) => out.replaceAll(secret, '[secret]'), line) },
  };
  return destination ? pino(options, destination) : pino(options);
}
