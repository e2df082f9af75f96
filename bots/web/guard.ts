// What the web API accepts before it reads a body: cross-site request forgery checks, content types, the session
// cookie and the person's language.
import type { FastifyRequest } from 'fastify';
import { UserFacingError } from '../../src/services/errors.ts';
import { isLocale, type Locale } from '../shared/i18n/index.ts';

export const SESSION_COOKIE = 'pb_session';
export const LOCALE_COOKIE = 'pb_lang';
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);
const UPLOAD_ROUTES = new Set(['/api/photos', '/api/pose']);

export const isStateChanging = (request: FastifyRequest) => !SAFE_METHODS.has(request.method);

const crossSite = () => new UserFacingError('cross_site', 'This request came from another site and was refused.', {}, 403);
const wrongType = () => new UserFacingError('bad_content_type', 'Send JSON, or photos as multipart/form-data.', {}, 415);

/**
 * The playground's own origins: its loopback names on the port this connection arrived at, WEB_HOST, and the host
 * the request was sent to (a LAN address). An Origin equal to the request's own Host is same-origin by definition;
 * under DNS rebinding it is the attacker's name, whose cookies are not the victim's.
 */
export function ownOrigins(request: FastifyRequest, webHost: string): Set<string> {
  const port = request.socket.localPort;
  const hosts = ['127.0.0.1', 'localhost', '[::1]', webHost.includes(':') ? `[${webHost}]` : webHost];
  const origins = new Set(hosts.map((host) => `http://${host}:${port}`));
  const host = request.headers.host;
  if (host && /^[a-z0-9.\-[\]:]+$/i.test(host)) for (const scheme of ['http', 'https']) origins.add(`${scheme}://${host.toLowerCase()}`);
  return origins;
}

/** The origins whose pages may change state here: WEB_ORIGINS when set (behind a proxy), else the server's own. */
export function allowedOrigins(request: FastifyRequest, web: { host: string; origins: readonly string[] }): Set<string> {
  return web.origins.length > 0 ? new Set(web.origins) : ownOrigins(request, web.host);
}

/**
 * Refuses a state-changing request that a page of another origin could have sent. Cookies are per host, not per
 * port, so SameSite alone lets any other local web app post to the playground with the victim's cookie: the Origin
 * (and Sec-Fetch-Site, where the browser sends it) must name the playground itself. Only JSON is accepted — a form
 * can't send it cross-origin without a CORS preflight, which this server never grants — and multipart only for
 * uploads, with an Origin that matches.
 */
export function checkStateChange(request: FastifyRequest, allowed: Set<string>, configured: ReadonlySet<string>): void {
  const origin = request.headers.origin;
  const site = request.headers['sec-fetch-site'];
  if (site !== undefined && site !== 'same-origin' && !(origin !== undefined && configured.has(origin))) throw crossSite();
  if (origin !== undefined && !allowed.has(origin)) throw crossSite();
  const type = mediaType(request.headers['content-type']);
  const path = request.url.split('?')[0]!;
  if (type === 'multipart/form-data') {
    if (!UPLOAD_ROUTES.has(path)) throw wrongType();
    if (origin === undefined) throw crossSite();
    return;
  }
  if (type === 'application/json') return;
  // A DELETE carries nothing: no body, no type (and a cross-origin DELETE needs a preflight anyway).
  if (request.method === 'DELETE' && type === undefined && !hasBody(request)) return;
  throw wrongType();
}

const mediaType = (header: string | undefined) => header?.split(';')[0]!.trim().toLowerCase() || undefined;
const hasBody = (request: FastifyRequest) =>
  request.headers['transfer-encoding'] !== undefined || Number(request.headers['content-length'] ?? 0) > 0;

/**
 * This playground's session id from the Cookie header. Never decoded: our ids are hex, and anything else (a bad
 * `%` escape, another local app's cookie of the same name) is simply not a session.
 */
export function sessionFromCookie(header: string | undefined): string | undefined {
  return cookieValue(header, SESSION_COOKIE, /^[a-f0-9]{32}$/);
}

/** The language the person chose with the page's switch (a cookie, so it holds before they have an account). */
export function localeFromCookie(header: string | undefined): Locale | undefined {
  const value = cookieValue(header, LOCALE_COOKIE, /^[a-z]{2}$/);
  return value && isLocale(value) ? value : undefined;
}

export const localeCookie = (locale: Locale) => `${LOCALE_COOKIE}=${locale}; Path=/; SameSite=Strict; Max-Age=31536000`;

function cookieValue(header: string | undefined, name: string, valid: RegExp): string | undefined {
  for (const pair of (header ?? '').split(';')) {
    const eq = pair.indexOf('=');
    if (eq < 0 || pair.slice(0, eq).trim() !== name) continue;
    const value = pair.slice(eq + 1).trim();
    if (valid.test(value)) return value;
  }
  return undefined;
}

export function sessionCookie(session: string | null): string {
  return session === null
    ? `${SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0`
    : `${SESSION_COOKIE}=${session}; Path=/; HttpOnly; SameSite=Strict; Max-Age=31536000`;
}

/** The first language of Accept-Language (by q, then order) that we have a catalogue for; English otherwise. */
export function acceptLanguage(header: string | undefined): Locale {
  const ranked = (header ?? '')
    .split(',')
    .map((entry, order) => {
      const [tag = '', ...params] = entry.trim().split(';');
      const q = params.map((p) => p.trim()).find((p) => p.startsWith('q='));
      return { base: tag.trim().toLowerCase().split(/[-_]/)[0] ?? '', q: q ? Number(q.slice(2)) : 1, order };
    })
    .filter((l) => Number.isFinite(l.q) && l.q > 0)
    .sort((a, b) => b.q - a.q || a.order - b.order);
  return ranked.find((l) => isLocale(l.base))?.base as Locale | undefined ?? 'en';
}
