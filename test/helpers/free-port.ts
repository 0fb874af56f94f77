// A TCP port on loopback that nothing listens on right now (for a spare Redis, or a dead one).
import { once } from 'node:events';
import * as net from 'node:net';

export async function freePort(): Promise<number> {
  const srv = net.createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const port = (srv.address() as net.AddressInfo).port;
  srv.close();
  await once(srv, 'close');
  return port;
}
