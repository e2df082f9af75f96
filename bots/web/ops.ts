// Operations routes on the web server: /healthz and /readyz (open: load balancers and orchestrators probe them),
// /metrics (open with METRICS_PUBLIC, else behind ADMIN_TOKEN), and the Bull Board queue dashboard at /admin/queues
// behind ADMIN_TOKEN (Bearer, or Basic with the token as the password). Without ADMIN_TOKEN the dashboard is off.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyBaseLogger, FastifyInstance, FastifyReply, FastifyRequest, RawServerDefault } from 'fastify';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { IServerAdapter } from '@bull-board/api/typings/app';
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { FastifyAdapter } from '@bull-board/fastify';
import type { App } from '../../src/app.ts';
import { healthResponder } from '../../src/health.ts';
import { allowedOrigins } from './guard.ts';

export const BULL_BOARD_PATH = '/admin/queues';

const digest = (text: string) => createHash('sha256').update(text).digest();

/** The token from `Authorization: Bearer <token>` or `Basic base64(any-user:<token>)`. */
function presentedToken(header: string | undefined): string | undefined {
  const [scheme, value] = (header ?? '').split(' ', 2);
  if (!value) return undefined;
  if (scheme?.toLowerCase() === 'bearer') return value.trim();
  if (scheme?.toLowerCase() === 'basic') {
    const decoded = Buffer.from(value, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    return colon >= 0 ? decoded.slice(colon + 1) : undefined;
  }
  return undefined;
}

/** Whether the request carries the admin token (compared in constant time). */
export function hasAdminToken(request: FastifyRequest, token: string): boolean {
  const presented = presentedToken(request.headers.authorization);
  return presented !== undefined && timingSafeEqual(digest(presented), digest(token));
}

function refuse(reply: FastifyReply) {
  // Basic lets a browser ask for the token; scripts send Bearer.
  return reply.status(401).header('www-authenticate', 'Basic realm="portrait-bot admin", charset="UTF-8"').send({ error: { code: 'unauthorized', message: 'Admin token required.' } });
}

export async function registerOpsRoutes<L extends FastifyBaseLogger>(web: FastifyInstance<RawServerDefault, IncomingMessage, ServerResponse, L>, app: App) {
  const { config } = app;
  const token = config.admin.token;
  const respond = healthResponder(app.health, true);
  // On the public port /readyz names the failed parts; why they failed (hosts, ports) only with the admin token.
  const respondPublicly = healthResponder(app.health, false, false);
  const send = async (reply: FastifyReply, path: string, detailed = true) => {
    const answer = (await (detailed ? respond : respondPublicly)(path))!;
    return reply.status(answer.status).type(answer.type).header('cache-control', 'no-store').send(answer.body);
  };
  web.get('/healthz', (_request, reply) => send(reply, '/healthz'));
  web.get('/readyz', (request, reply) => send(reply, '/readyz', token !== undefined && hasAdminToken(request, token)));
  web.get('/metrics', async (request, reply) => {
    if (config.metricsPublic) return send(reply, '/metrics');
    if (!token) return reply.callNotFound();
    if (!hasAdminToken(request, token)) return refuse(reply);
    return send(reply, '/metrics');
  });

  if (!token) return;
  const board = new FastifyAdapter();
  // @bull-board/fastify brings its own copy of @bull-board/api (a patch release apart); the adapter is duck-typed.
  createBullBoard({ queues: [new BullMQAdapter(app.queues.train), new BullMQAdapter(app.queues.generate)], serverAdapter: board as unknown as IServerAdapter });
  board.setBasePath(BULL_BOARD_PATH);
  await web.register(async (scope) => {
    scope.addHook('onRequest', async (request, reply) => {
      if (!hasAdminToken(request, token)) return refuse(reply);
      // Basic credentials ride along with any request a browser makes, so a page elsewhere must not drive the board.
      const origin = request.headers.origin;
      if (request.method !== 'GET' && origin && !allowedOrigins(request, config.web).has(origin)) {
        return reply.status(403).send({ error: { code: 'cross_site', message: 'Cross-site request refused.' } });
      }
    });
    await scope.register(board.registerPlugin(), { prefix: BULL_BOARD_PATH });
  });
}
