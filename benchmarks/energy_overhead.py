import sys, time, statistics; sys.path.insert(0, "tests")
import torch
torch.set_num_threads(int(__import__("os").environ.get("NT", "2")))
from conftest import make_rwkv6
from spikelm.energy import EnergyCounter
from spikelm.energy import counters as K
from spikelm.convert.to_spiking import convert, preset_config
C = int(sys.argv[1]); L = int(sys.argv[2]); sites = sys.argv[3]; T = int(sys.argv[4]); preset = sys.argv[5]
V = 257
g = torch.Generator().manual_seed(0)
bs = [torch.randint(0, V, (1, 128), generator=g) for _ in range(2)]
m = make_rwkv6(n_layer=L, n_embd=C, head_size=64, vocab_size=V)
if sites != "ann":
    convert(m, preset_config(preset, sites), bs)
x = torch.randint(0, V, (1, T), generator=g)
spent = [0.0]
op, oq = K.EnergyCounter._pre, K.EnergyCounter._post
def timed(f):
    def w(*a):
        t = time.perf_counter(); f(*a); spent[0] += time.perf_counter() - t
    return w
K.EnergyCounter._pre = lambda self, mod, fn: op(self, mod, timed(fn))
K.EnergyCounter._post = lambda self, mod, fn: oq(self, mod, timed(fn))
rs = []
for i in range(9):
    spent[0] = 0.0
    t = time.perf_counter()
    with torch.no_grad(), EnergyCounter(m):
        m(x)
    tot = time.perf_counter() - t
    rs.append(spent[0] / (tot - spent[0]))
print(f"C={C} L={L} {sites} {preset} tokens={T}: hook time / model time = {100*statistics.median(rs):.1f}% (runs: {' '.join(f'{100*r:.1f}' for r in rs)})")
