// A TCP port nobody listens on right now (for servers a test starts later, or never), and a proxy that can hang.
import { createConnection, createServer, type Socket } from 'node:net';

export function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

export interface SilentProxy {
  port: number;
  /** A URL like `url` (host and port replaced) that goes through the proxy. */
  via(url: string): string;
  /** From now on the server "hangs": connections are accepted but nothing is passed on, in either direction. */
  hang(): void;
  /** Passes traffic again; connections opened while hanging are closed (their clients gave up on them). */
  resume(): void;
  close(): Promise<void>;
}

/**
 * A TCP proxy in front of a real server that can be made to hang: it keeps accepting connections and stays silent,
 * as a frozen or overloaded server does. Owned by the test, so the shared server behind it is never touched.
 */
export async function silentProxy(target: { host: string; port: number }): Promise<SilentProxy> {
  let hanging = false;
  const pairs = new Set<{ client: Socket; upstream?: Socket }>();
  const server = createServer((client) => {
    const pair: { client: Socket; upstream?: Socket } = { client };
    pairs.add(pair);
    client.on('error', () => {});
    client.on('close', () => { pairs.delete(pair); pair.upstream?.destroy(); });
    if (hanging) return;
    const upstream = createConnection(target);
    pair.upstream = upstream;
    upstream.on('error', () => client.destroy());
    upstream.on('close', () => client.destroy());
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  return {
    port,
    via(url) {
      const proxied = new URL(url);
      proxied.host = `127.0.0.1:${port}`;
      return proxied.toString();
    },
    hang() {
      hanging = true;
      for (const { client, upstream } of pairs) { client.unpipe(); upstream?.unpipe(); client.pause(); upstream?.pause(); }
    },
    resume() {
      hanging = false;
      for (const pair of pairs) {
        if (!pair.upstream) pair.client.destroy();
        else { pair.client.pipe(pair.upstream); pair.upstream.pipe(pair.client); }
      }
    },
    async close() {
      for (const { client, upstream } of pairs) { client.destroy(); upstream?.destroy(); }
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
