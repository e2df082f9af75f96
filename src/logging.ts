// The process logger: pino, with every configured secret scrubbed from each line before it is written. Chat client
// errors carry request URLs, and Telegram's Bot API puts the token in the path (`/bot<token>/getMe`), so redacting
// known fields is not enough: the secret's text itself is replaced wherever it appears.
// JSON lines in production; pino-pretty's readable lines on a terminal (or LOG_PRETTY=1).
import pino, { type DestinationStream, type Logger } from 'pino';
import pretty from 'pino-pretty';
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
  return [config.telegram.token, config.discord.token, config.telegram.webhook.secret, config.storage.s3.secretAccessKey, config.admin.token, ...passwords]
    .filter((s): s is string => typeof s === 'string' && s.length >= 4);
}

/**
 * A child logger that binds a key its parent already bound writes the key twice (pino appends bindings), and
 * JSON readers disagree on which one counts. Each line is rewritten with one value per key: the innermost one, which
 * is what JSON.parse keeps.
 */
export function withUniqueKeys(line: string): string {
  try {
    return `${JSON.stringify(JSON.parse(line))}\n`;
  } catch {
    return line;
  }
}

/** Pretty lines when asked (LOG_PRETTY), else when stdout is a terminal. */
export const wantsPretty = (config: Config, stdoutIsTty = Boolean(process.stdout.isTTY)) => config.logPretty ?? stdoutIsTty;

export function createLogger(config: Config, destination?: DestinationStream): Logger {
  const secrets = secretsOf(config);
  // JSON-escaped too, as a secret inside a logged string appears in the line.
  const forms = [...new Set(secrets.flatMap((s) => [s, JSON.stringify(s).slice(1, -1), encodeURIComponent(s)]))];
  const options: pino.LoggerOptions = {
    level: config.logLevel,
    hooks: { streamWrite: (line) => forms.reduce((out, secret) => out.replaceAll(secret, '[secret]'), withUniqueKeys(line)) },
  };
  if (destination) return pino(options, destination);
  // pino-pretty as a stream in this thread (not a worker transport), so the hook above still scrubs every line.
  return wantsPretty(config) ? pino(options, pretty({ colorize: Boolean(process.stdout.isTTY), sync: true })) : pino(options);
}
