// How many image decodes run at once in this process. A decode holds the whole raster (about 10 bytes per pixel
// through libvips and the JPEG encoder), so eight parallel uploads must not mean eight rasters in memory.

export class DecodeSlots {
  private active = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(private size: number) {}

  /** Changes the number of slots; waiters are let in at once when it grows. */
  resize(size: number): void {
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`decode concurrency must be a positive integer, got ${size}`);
    this.size = size;
    while (this.active < this.size && this.waiting.length > 0) {
      this.active++;
      this.waiting.shift()!();
    }
  }

  async run<T>(decode: () => Promise<T>): Promise<T> {
    if (this.active < this.size) this.active++;
    else await new Promise<void>((resolve) => this.waiting.push(resolve)); // the releasing decode hands its slot over
    try {
      return await decode();
    } finally {
      const next = this.active <= this.size ? this.waiting.shift() : undefined;
      if (next) next();
      else this.active--;
    }
  }

  get stats() {
    return { size: this.size, active: this.active, waiting: this.waiting.length };
  }
}

/** The process-wide slots every upload decode goes through; createApp sizes it from IMAGE_DECODE_CONCURRENCY. */
export const decodeSlots = new DecodeSlots(2);
