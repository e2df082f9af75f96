// The web playground alone: queues jobs and shows them; starts no engine and needs no chat token.
import { startRoles } from './roles.ts';

await startRoles(['web']);
