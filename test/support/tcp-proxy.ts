/**
 * A TCP proxy in front of a server (PostgreSQL in the tests), to cut it off and bring it back on
 * the same port: an outage as the client sees it, without stopping the shared server. `retarget`
 * points it at another port (a failover as the application's one stable endpoint sees it).
 */
import net from "node:net";

export interface Proxy {
  readonly port: number;
  down(): Promise<void>;
  up(): Promise<void>;
  /** Drop every open connection and send new ones to `port` on the same host. */
  retarget(port: number): void;
  close(): Promise<void>;
}

export async function startProxy(target: URL): Promise<Proxy> {
  const sockets = new Set<net.Socket>();
  let targetPort = Number(target.port || 5432);
  const make = () =>
    net.createServer((client) => {
      const upstream = net.connect({ host: target.hostname, port: targetPort });
      sockets.add(client).add(upstream);
      const drop = () => {
        client.destroy();
        upstream.destroy();
        sockets.delete(client);
        sockets.delete(upstream);
      };
      client.on("error", drop).on("close", drop);
      upstream.on("error", drop).on("close", drop);
      client.pipe(upstream).pipe(client);
    });
  let server = make();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  const down = async () => {
    for (const socket of sockets) socket.destroy();
    sockets.clear();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return {
    port,
    down,
    async up() {
      server = make();
      await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
    },
    retarget(p) {
      targetPort = p;
      for (const socket of sockets) socket.destroy();
      sockets.clear();
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      if (server.listening) await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
