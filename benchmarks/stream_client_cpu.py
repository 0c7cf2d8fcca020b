"""Client CPU per streamed response (pipeline.llm transport): the simulator in another process,
N requests of about L tokens each, 32 at a time.

    PYTHONPATH=. python benchmarks/stream_client_cpu.py 1500 200     # L=1500 tokens, N=200
"""
import asyncio, math, multiprocessing, sys, time, tempfile
from pathlib import Path

def serve(q, mu):
    from pipeline.simulator import SimConfig, SimServer
    s = SimServer(SimConfig(models=["r1"], slots=64, length_mu=mu, length_sigma=0.01)).start()
    q.put(s.url)
    while True: time.sleep(1)

async def main(url, n, conc):
    from pipeline.config import EndpointConfig
    from pipeline.llm import ModelClient, ResponseStore
    store = ResponseStore(Path(tempfile.mkdtemp()) / "r.sqlite")
    c = ModelClient(EndpointConfig(url=url, model="r1", max_concurrency=conc), "reasoner", store)
    sem = asyncio.Semaphore(conc)
    async def one(i):
        async with sem:
            return await c.chat([{"role": "user", "content": f"Question {i}: the decisive detail for the question is 7. what?"}],
                                stage="reasoning", priority=0, order=i)
    t0, c0 = time.perf_counter(), time.process_time()
    res = await asyncio.gather(*(one(i) for i in range(n)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    toks = sum(r.usage.completion_tokens for r in res)
    print(f"n={n} tokens/response={toks/n:.0f} wall={wall:.2f}s client_cpu={cpu*1000/n:.2f} ms/response "
          f"({cpu*1e6/toks:.2f} us/token)")
    await c.close()

if __name__ == "__main__":
    q = multiprocessing.Queue()
    p = multiprocessing.Process(target=serve, args=(q, math.log(float(sys.argv[1]))), daemon=True)
    p.start()
    url = q.get()
    asyncio.run(main(url, int(sys.argv[2]), 32))
    p.terminate()
