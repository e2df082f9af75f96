// The Telegram adapter alone (TELEGRAM_BOT_TOKEN required): queues jobs and delivers their results; starts no engine.
import { startRoles } from './roles.ts';

await startRoles(['telegram']);
