// A GPU worker alone: BullMQ workers over one engine per ENGINE_GPUS entry; needs no chat token (the chat
// processes deliver its results from the outbox).
import { startRoles } from './roles.ts';

await startRoles(['worker']);
