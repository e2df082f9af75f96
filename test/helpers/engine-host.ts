// A stand-in worker process for the orphan test: starts the real engine under the supervisor, prints its pid, and
// waits to be killed.
import pino from 'pino';
import { EngineSupervisor, type EngineLaunch } from '../../worker/engine-client/supervisor.ts';

const { launch } = JSON.parse(process.env.HOST_CONFIG!) as { launch: EngineLaunch };
const engine = new EngineSupervisor({ launch, logger: pino({ level: 'silent' }) });
await engine.start();
process.stdout.write(`engine-pid ${engine.pid}\n`);
setInterval(() => {}, 60_000);
