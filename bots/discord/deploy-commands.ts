// Registers the slash commands with Discord: `npx tsx bots/discord/deploy-commands.ts`.
// With DISCORD_GUILD_ID they go to that server only and appear at once (for testing); without it, globally.
import { pathToFileURL } from 'node:url';
import { REST, Routes } from 'discord.js';
import { ConfigError, loadConfig, type Config } from '../../src/config/index.ts';
import { commands } from './commands/index.ts';

/** What is registered: every command's JSON, with its names and descriptions in every catalogue language. */
export const commandPayload = () => [...commands.values()].map((c) => c.definition.toJSON());

export async function deployCommands(config: Config['discord']): Promise<string[]> {
  if (!config.token || !config.applicationId) throw new Error('DISCORD_TOKEN and DISCORD_APPLICATION_ID must be set to deploy commands');
  const rest = new REST(config.apiRoot ? { api: config.apiRoot } : {}).setToken(config.token);
  const route = config.guildId ? Routes.applicationGuildCommands(config.applicationId, config.guildId) : Routes.applicationCommands(config.applicationId);
  // PUT replaces the whole set: commands removed from the code disappear from Discord too.
  const registered = (await rest.put(route, { body: commandPayload() })) as Array<{ name: string }>;
  return registered.map((c) => c.name);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  try {
    const config = loadConfig();
    const names = await deployCommands(config.discord);
    console.log(`Registered ${names.length} commands${config.discord.guildId ? ` in guild ${config.discord.guildId}` : ' globally'}: ${names.join(', ')}`);
  } catch (error) {
    console.error(error instanceof ConfigError ? error.message : (error as Error).message);
    process.exit(1);
  }
}
