/**
 * A single-consumer async queue: the scheduler pushes events as steps
 * produce them, the HTTP handler pulls them. `fail` ends the stream with an
 * error after whatever was already queued; `return()` on the iterator tells
 * the producer the consumer left.
 */
export class EventQueue<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private waiter: (() => void) | undefined;
  private ended = false;
  private error: unknown;

  constructor(private readonly onClose: () => void = () => {}) {}

  push(item: T): void {
    if (this.ended) return;
    this.items.push(item);
    this.wake();
  }

  end(): void {
    this.ended = true;
    this.wake();
  }

  fail(err: unknown): void {
    if (this.ended) return;
    this.error = err;
    this.end();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    try {
      for (;;) {
        if (this.items.length > 0) {
          yield this.items.shift() as T;
          continue;
        }
        if (this.ended) {
          if (this.error !== undefined) throw this.error;
          return;
        }
        await new Promise<void>((resolve) => (this.waiter = resolve));
      }
    } finally {
      if (!this.ended || this.items.length > 0) this.onClose();
    }
  }
}
