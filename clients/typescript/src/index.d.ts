// Types of the boxctl API client (see api/openapi.json in the boxctl repository).
import type WebSocket from 'ws';

export type Method = 'GET' | 'POST' | 'PUT' | 'DELETE';
export declare const ROUTES: Readonly<Record<OperationId, readonly [Method, string]>>;
export type OperationId =
  | 'health' | 'openapi' | 'metrics' | 'listBoxes' | 'createBox' | 'importBox' | 'getBox' | 'removeBox'
  | 'startBox' | 'stopBox' | 'boxStats' | 'exec' | 'execStream' | 'putFiles' | 'getFiles' | 'statFile'
  | 'listFiles' | 'listSnapshots' | 'createSnapshot' | 'removeSnapshot' | 'restoreSnapshot' | 'cloneBox'
  | 'exportBox' | 'listCheckpoints' | 'createCheckpoint' | 'removeCheckpoint' | 'restoreCheckpoint'
  | 'forkBox' | 'listImages' | 'pullImage' | 'removeImage';

export declare const STDIN: 0;
export declare const STDOUT: 1;
export declare const STDERR: 2;

export type ErrorCode =
  | 'not_found' | 'already_exists' | 'invalid_state' | 'invalid_argument' | 'unsupported'
  | 'permission_denied' | 'shut_down' | 'ambiguous' | 'unauthorized' | 'too_large'
  | 'too_many_requests' | 'internal' | '';

export declare class BoxctlError extends Error {
  readonly status: number;
  readonly code: ErrorCode;
}

export type BoxStatus = 'configured' | 'starting' | 'running' | 'paused' | 'stopping' | 'stopped' | 'suspended';

export interface Box {
  id: string;
  name: string;
  created_at: string;
  status: BoxStatus;
  config: Record<string, unknown> & { image: string; labels?: Record<string, string>; detach?: boolean };
  run?: Record<string, unknown> & { detached?: boolean };
  image_digest?: string;
  error?: string;
  [key: string]: unknown;
}

export interface HealthCheck { cmd: string; interval?: string; timeout?: string; retries?: number; start_period?: string }

export interface CreateBoxRequest {
  image: string;
  name?: string;
  cmd?: string[];
  entrypoint?: string[];
  env?: string[];
  workdir?: string;
  user?: string;
  cpus?: number;
  memory?: string;
  disk_size?: string;
  ports?: string[];
  volumes?: string[];
  network?: 'user' | 'none';
  allow_net?: string[];
  allow_host_loopback?: boolean;
  labels?: Record<string, string>;
  auto_remove?: boolean;
  platform?: string;
  health?: HealthCheck;
  start?: boolean;
  pull?: boolean;
}

export interface ExecRequest {
  cmd: string[];
  env?: string[];
  workdir?: string;
  user?: string;
  stdin?: string;
  timeout_seconds?: number;
  detach?: boolean;
}

export interface ExecResponse {
  exit_code: number;
  signal?: number;
  timed_out?: boolean;
  duration_ms: number;
  pid?: number;
  stdout: string;
  stderr: string;
  truncated?: boolean;
}

export interface ExecStreamOptions {
  cmd: string[];
  env?: string[];
  workdir?: string;
  user?: string;
  tty?: boolean;
  cols?: number;
  rows?: number;
  stdin?: boolean;
  timeoutSeconds?: number;
  onStdout?: (data: Buffer) => void;
  onStderr?: (data: Buffer) => void;
}

export interface ExecExit { exitCode: number; signal: number; timedOut: boolean }

export interface FileInfo { name: string; size: number; mode: string; type: 'file' | 'dir' | 'symlink' | 'other'; mod_time: string; link?: string }

export interface Image { digest: string; references: string[]; platform: string; size: number; created_at: string; pulled_at: string; used_by: string[] }

export interface PullEvent {
  type: 'status' | 'layer' | 'done' | 'error';
  status?: string;
  layer?: { digest: string; total: number; done: number; state: string };
  image?: Image;
  error?: { code: ErrorCode; message: string };
}

export interface Metrics { boxes_created: number; boxes_failed: number; boxes_stopped: number; commands_executed: number; exec_errors: number }

export interface Snapshot { name: string; created_at: string; size: number; virtual_size: number; [key: string]: unknown }
export interface Checkpoint { name: string; created_at: string; size: number; [key: string]: unknown }

export interface ClientOptions { socketPath?: string; baseUrl?: string; token?: string }

export interface RawResponse { status: number; headers: Record<string, string | string[] | undefined>; body: Buffer }

export declare class ExecStream {
  readonly ws: WebSocket;
  readonly opened: Promise<void>;
  readonly exit: Promise<ExecExit>;
  write(data: string | Uint8Array): Promise<void>;
  control(msg: { type: 'resize' | 'signal' | 'close_stdin'; cols?: number; rows?: number; signal?: number }): Promise<void>;
  resize(cols: number, rows: number): Promise<void>;
  signal(signal: number): Promise<void>;
  closeStdin(): Promise<void>;
  close(): void;
}

export declare class BoxctlClient {
  constructor(opts: ClientOptions);
  close(): void;
  raw(method: Method, path: string, opts?: { query?: Record<string, unknown>; body?: unknown; contentType?: string }): Promise<RawResponse>;
  call(op: OperationId, opts?: { params?: Record<string, string>; query?: Record<string, unknown>; body?: unknown; contentType?: string; binary?: boolean }): Promise<any>;
  health(): Promise<{ status: string; home: string }>;
  openapi(): Promise<Record<string, unknown>>;
  metrics(): Promise<Metrics>;
  listBoxes(opts?: { label?: string }): Promise<Box[]>;
  createBox(req: CreateBoxRequest): Promise<Box>;
  getBox(id: string): Promise<Box>;
  removeBox(id: string, opts?: { force?: boolean }): Promise<void>;
  startBox(id: string, opts?: { cold?: boolean }): Promise<Box>;
  stopBox(id: string, opts?: { timeoutSeconds?: number }): Promise<Box | undefined>;
  boxStats(id: string): Promise<Record<string, unknown>>;
  exec(id: string, req: ExecRequest): Promise<ExecResponse>;
  execStream(id: string, opts: ExecStreamOptions): ExecStream;
  putFile(id: string, path: string, data: string | Uint8Array, opts?: { mode?: string }): Promise<void>;
  putTar(id: string, dir: string, tar: Uint8Array, opts?: { noOverwrite?: boolean }): Promise<void>;
  getFile(id: string, path: string): Promise<Buffer>;
  getTar(id: string, path: string, opts?: { followSymlinks?: boolean }): Promise<Buffer>;
  statFile(id: string, path: string): Promise<FileInfo>;
  listFiles(id: string, path: string): Promise<FileInfo[]>;
  listImages(): Promise<Image[]>;
  pullImage(ref: string, opts?: { platform?: string; onProgress?: (ev: PullEvent) => void }): Promise<Image>;
  removeImage(ref: string, opts?: { force?: boolean }): Promise<{ images: string[]; reclaimed: number }>;
  listSnapshots(id: string): Promise<Snapshot[]>;
  createSnapshot(id: string, name?: string): Promise<Snapshot>;
  removeSnapshot(id: string, name: string): Promise<void>;
  restoreSnapshot(id: string, name: string, opts?: { force?: boolean; timeoutSeconds?: number }): Promise<Box>;
  cloneBox(id: string, req?: { name?: string; count?: number; snapshot?: string; start?: boolean }): Promise<Box[]>;
  exportBox(id: string, opts?: { withSnapshots?: boolean; withImage?: boolean }): Promise<Buffer>;
  importBox(archive: Uint8Array, opts?: { name?: string }): Promise<Box>;
  listCheckpoints(id: string): Promise<Checkpoint[]>;
  createCheckpoint(id: string, name?: string): Promise<Checkpoint>;
  removeCheckpoint(id: string, name: string): Promise<void>;
  restoreCheckpoint(id: string, name: string, opts?: { force?: boolean; timeoutSeconds?: number }): Promise<Box>;
  forkBox(id: string, req?: { name?: string; count?: number }): Promise<Box[]>;
}
