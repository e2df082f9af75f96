// The Discord adapter alone (DISCORD_TOKEN required): queues jobs and delivers their results; starts no engine.
import { startRoles } from './roles.ts';

await startRoles(['discord']);
