// A stack with the real chat adapters logged in to the Telegram and Discord emulators.
import { createTelegramBot, type TelegramBot } from '../../bots/telegram/bot.ts';
import { createDiscordBot, type DiscordBot } from '../../bots/discord/bot.ts';
import { TelegramEmulator } from '../emulators/telegram.ts';
import { DiscordEmulator } from '../emulators/discord.ts';
import { chatEmulatorEnv, startStack, type Stack } from './stack.ts';

export interface ChatStack { stack: Stack; telegram: TelegramEmulator; discord: DiscordEmulator; telegramBot: TelegramBot; discordBot: DiscordBot; close(): Promise<void> }

/** A stack (without a worker unless asked), with the real Telegram and Discord adapters logged in to their emulators. */
export async function startChatStack(overrides: Record<string, string> = {}, options: { worker?: boolean; logger?: Parameters<typeof startStack>[2] } = {}): Promise<ChatStack> {
  const telegram = new TelegramEmulator();
  const discord = new DiscordEmulator();
  await Promise.all([telegram.start(), discord.start()]);
  const stack = await startStack({ ...chatEmulatorEnv(telegram, discord), ...overrides }, options.worker ?? false, options.logger);
  const telegramBot = createTelegramBot(stack.app, { albumWindowMs: 300, sweepIntervalMs: 1000 });
  const discordBot = createDiscordBot(stack.app, { sweepIntervalMs: 1000 });
  await Promise.all([telegramBot.start(), discordBot.start()]);
  return {
    stack, telegram, discord, telegramBot, discordBot,
    async close() {
      await Promise.all([telegramBot.stop(), discordBot.stop()]);
      await stack.close();
      await Promise.all([telegram.stop(), discord.stop()]);
    },
  };
}
