// Compiled by `npm test` (tsc --noEmit): the declarations are usable from
// TypeScript as a program would use them.
import { BoxctlClient, BoxctlError, ROUTES, type Box, type ExecResponse } from '../src/index.js';

async function example(): Promise<void> {
  const c = new BoxctlClient({ socketPath: '/tmp/api.sock' });
  const box: Box = await c.createBox({ image: 'alpine', name: 'web', memory: '256MiB', start: true });
  const res: ExecResponse = await c.exec(box.id, { cmd: ['echo', 'hi'] });
  const s = c.execStream(box.id, { cmd: ['sh'], tty: true, stdin: true, onStdout: (b) => process.stdout.write(b) });
  await s.write('exit ' + res.exit_code + '\n');
  await s.resize(120, 40);
  const { exitCode } = await s.exit;
  const [method, path] = ROUTES.listBoxes;
  try {
    await c.getBox(method + path + exitCode);
  } catch (e) {
    if (e instanceof BoxctlError && e.code === 'not_found') return;
  }
  c.close();
}
void example;
