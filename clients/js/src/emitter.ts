// A tiny typed event emitter (no dependency; works in browsers and Node).

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export class Emitter<Events extends Record<string, (...args: any[]) => void>> {
  #handlers = new Map<keyof Events, Set<Events[keyof Events]>>()

  on<K extends keyof Events>(event: K, handler: Events[K]): () => void {
    let set = this.#handlers.get(event)
    if (!set) {
      set = new Set()
      this.#handlers.set(event, set)
    }
    set.add(handler)
    return () => this.off(event, handler)
  }

  off<K extends keyof Events>(event: K, handler: Events[K]): void {
    this.#handlers.get(event)?.delete(handler)
  }

  /** Resolves with the arguments of the next `event` that satisfies `pred`. */
  once<K extends keyof Events>(
    event: K,
    pred: (...args: Parameters<Events[K]>) => boolean = () => true,
  ): Promise<Parameters<Events[K]>> {
    return new Promise((resolve) => {
      const handler = ((...args: Parameters<Events[K]>) => {
        if (!pred(...args)) return
        this.off(event, handler)
        resolve(args)
      }) as Events[K]
      this.on(event, handler)
    })
  }

  protected emit<K extends keyof Events>(event: K, ...args: Parameters<Events[K]>): void {
    const set = this.#handlers.get(event)
    if (!set) return
    for (const h of [...set]) {
      try {
        h(...args)
      } catch (e) {
        // A failing listener must not break the protocol state machine.
        console.error(`flowhub: ${String(event)} listener failed`, e)
      }
    }
  }
}
