// The mesh's layered layout, left to right (Sugiyama style): rank, order,
// place, route. Pure (no DOM), so node can import and time it.

export const NODE_W = 216;
export const NODE_H = 68;
const GAP_X = 60;   // between ranks: room for the curves and their arrows
const GAP_Y = 18;   // between two nodes of a rank
const DUMMY_H = 4;  // a long edge's waypoint holds a little room in each rank it crosses
const DUMMY_GAP = 6;
const MARGIN = 16;
const SWEEPS = 6;

// nodes: [{id}], edges: [{from, to}] → {width, height, nodes: Map id →
// {x, y, w, h}, edges: [{index, points: [[x, y]…], back}]}. `index` is the
// edge's index in `edges`; edges with an unknown end or to themselves are
// left out. `points` run from the edge's `from` to its `to`.
export function layout(nodes, edges) {
  const n = nodes.length;
  const index = new Map(nodes.map((node, i) => [node.id, i]));
  const links = []; // {edge, a, b}: usable edges as vertex numbers
  const outs = Array.from({ length: n }, () => []);
  edges.forEach((e, edge) => {
    const a = index.get(e.from), b = index.get(e.to);
    if (a === undefined || b === undefined || a === b) return;
    outs[a].push(links.length);
    links.push({ edge, a, b });
  });

  // 1. Break cycles (a trigger whose subscriber is a broker upstream): a
  // DFS from the roots marks the edges that close a cycle; they are laid
  // out reversed and drawn in their own direction. Iterative, so a long
  // chain cannot overflow the stack.
  const hasIn = new Uint8Array(n);
  for (const l of links) hasIn[l.b] = 1;
  const state = new Uint8Array(n); // 0 unseen, 1 on the path, 2 done
  const back = new Uint8Array(links.length);
  const starts = [...nodes.keys()].filter((v) => !hasIn[v]).concat([...nodes.keys()]);
  for (const root of starts) {
    if (state[root]) continue;
    state[root] = 1;
    const stack = [[root, 0]];
    while (stack.length) {
      const top = stack[stack.length - 1];
      const v = top[0];
      if (top[1] < outs[v].length) {
        const li = outs[v][top[1]++];
        const t = links[li].b;
        if (state[t] === 1) back[li] = 1;
        else if (state[t] === 0) { state[t] = 1; stack.push([t, 0]); }
      } else { state[v] = 2; stack.pop(); }
    }
  }
  const dag = links.map((l, i) => (back[i] ? { s: l.b, t: l.a } : { s: l.a, t: l.b }));

  // 2. Rank: the longest path from a node with no incoming edge (Kahn's
  // topological order), then sources move right next to what they feed,
  // so a PingSource sits beside its broker and not in column 0.
  const succ = Array.from({ length: n }, () => []);
  const indeg = new Int32Array(n);
  for (const d of dag) { succ[d.s].push(d.t); indeg[d.t]++; }
  const isRoot = indeg.map((k) => (k ? 0 : 1));
  const rank = new Int32Array(n);
  const queue = [];
  for (let v = 0; v < n; v++) if (!indeg[v]) queue.push(v);
  for (let q = 0; q < queue.length; q++) {
    const v = queue[q];
    for (const t of succ[v]) {
      if (rank[t] < rank[v] + 1) rank[t] = rank[v] + 1;
      if (--indeg[t] === 0) queue.push(t);
    }
  }
  for (let v = 0; v < n; v++) {
    if (isRoot[v] && succ[v].length) {
      rank[v] = Math.max(rank[v], Math.min(...succ[v].map((t) => rank[t])) - 1);
    }
  }

  // 3. Long edges get one waypoint (a "dummy" vertex) per rank they cross,
  // so ordering sees them and placement keeps room for them.
  const vRank = Array.from(rank), vH = new Array(n).fill(NODE_H);
  const up = Array.from({ length: n }, () => []), down = Array.from({ length: n }, () => []);
  const chains = dag.map((d) => {
    const chain = [d.s];
    for (let r = rank[d.s] + 1; r < rank[d.t]; r++) {
      const v = vRank.length;
      vRank.push(r); vH.push(DUMMY_H); up.push([]); down.push([]);
      chain.push(v);
    }
    chain.push(d.t);
    for (let i = 1; i < chain.length; i++) { down[chain[i - 1]].push(chain[i]); up[chain[i]].push(chain[i - 1]); }
    return chain;
  });
  const ranks = [];
  vRank.forEach((r, v) => (ranks[r] ??= []).push(v));
  for (let r = 0; r < ranks.length; r++) ranks[r] ??= [];

  // 4. Order within ranks: barycenter sweeps down and up; keep the order
  // with the fewest crossings seen.
  const pos = new Float64Array(vRank.length);
  const number = () => ranks.forEach((layer) => layer.forEach((v, i) => (pos[v] = i)));
  number();
  const sweep = (layer, nbrs) => {
    const bc = new Map(layer.map((v) => {
      const ns = nbrs[v];
      return [v, ns.length ? ns.reduce((s, u) => s + pos[u], 0) / ns.length : pos[v]];
    }));
    layer.sort((a, b) => bc.get(a) - bc.get(b) || pos[a] - pos[b]);
    layer.forEach((v, i) => (pos[v] = i));
  };
  let best = ranks.map((l) => l.slice()), bestCross = crossings(ranks, down, pos);
  for (let i = 0; i < SWEEPS && bestCross > 0; i++) {
    for (let r = 1; r < ranks.length; r++) sweep(ranks[r], up);
    for (let r = ranks.length - 2; r >= 0; r--) sweep(ranks[r], down);
    const c = crossings(ranks, down, pos);
    if (c < bestCross) { bestCross = c; best = ranks.map((l) => l.slice()); }
  }
  best.forEach((l, r) => (ranks[r] = l));
  number();

  // 5. Place: stack each rank, then pull every vertex towards the mean of
  // its neighbours' centres, keeping the order and the gaps (an isotonic
  // regression, solved exactly by pool-adjacent-violators).
  const cy = new Float64Array(vRank.length);
  for (const layer of ranks) {
    let y = 0;
    for (const v of layer) { cy[v] = y + vH[v] / 2; y += vH[v] + GAP_Y; }
  }
  const mean = (v, nbrs) => {
    let s = 0, k = 0;
    for (const list of nbrs) for (const u of list[v]) { s += cy[u]; k++; }
    return k ? s / k : cy[v];
  };
  for (let pass = 0; pass < 8; pass++) {
    const nbrs = pass === 7 ? [up, down] : pass % 2 ? [down] : [up];
    const order = pass % 2 ? ranks.slice().reverse() : ranks;
    for (const layer of order) place(layer, layer.map((v) => mean(v, nbrs)), vH, cy);
  }
  let top = Infinity, bottom = -Infinity;
  cy.forEach((c, v) => { top = Math.min(top, c - vH[v] / 2); bottom = Math.max(bottom, c + vH[v] / 2); });
  if (!vRank.length) top = bottom = 0;
  const shift = MARGIN - top;
  const colX = (r) => MARGIN + r * (NODE_W + GAP_X);

  const out = new Map();
  nodes.forEach((node, v) => out.set(node.id, { x: colX(rank[v]), y: cy[v] + shift - NODE_H / 2, w: NODE_W, h: NODE_H }));

  // 6. Route: from the right side of the upstream end to the left side of
  // the downstream one, straight across each column a waypoint crosses.
  const routed = chains.map((chain, i) => {
    const pts = [[colX(vRank[chain[0]]) + NODE_W, cy[chain[0]] + shift]];
    for (const v of chain.slice(1, -1)) {
      pts.push([colX(vRank[v]), cy[v] + shift], [colX(vRank[v]) + NODE_W, cy[v] + shift]);
    }
    const last = chain[chain.length - 1];
    pts.push([colX(vRank[last]), cy[last] + shift]);
    return { index: links[i].edge, points: pts, back: !!back[i], ends: [chain[0], last] };
  });
  spreadPorts(routed);
  for (const r of routed) {
    if (r.back) r.points.reverse();
    delete r.ends;
  }
  const width = colX(Math.max(0, ranks.length - 1)) + NODE_W + MARGIN;
  return { width, height: bottom - top + 2 * MARGIN, nodes: out, edges: routed };
}

// Crossings between adjacent ranks: sort the segments by their upper end
// and count inversions of their lower end (a Fenwick tree).
function crossings(ranks, down, pos) {
  let total = 0;
  for (let r = 0; r + 1 < ranks.length; r++) {
    const segs = [];
    for (const v of ranks[r]) for (const t of down[v]) segs.push([pos[v], pos[t]]);
    segs.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    const size = ranks[r + 1].length + 1, tree = new Int32Array(size + 1);
    let seen = 0;
    for (const [, b] of segs) {
      let le = 0;
      for (let i = b + 1; i > 0; i -= i & -i) le += tree[i];
      total += seen - le;
      seen++;
      for (let i = b + 1; i <= size; i += i & -i) tree[i]++;
    }
  }
  return total;
}

// Centres as close as possible to `want` (least squares) with each vertex
// at least a gap below the one before: with offsets o (the tightest
// packing), z = y - o must not decrease; pool adjacent violators on want - o.
function place(layer, want, vH, cy) {
  const off = [];
  let o = 0;
  layer.forEach((v, i) => {
    if (i) {
      const p = layer[i - 1];
      o += (vH[p] + vH[v]) / 2 + (vH[p] === DUMMY_H && vH[v] === DUMMY_H ? DUMMY_GAP : GAP_Y);
    }
    off.push(o);
  });
  const blocks = []; // [sum, count]
  want.forEach((w, i) => {
    blocks.push([w - off[i], 1]);
    while (blocks.length > 1) {
      const [s1, c1] = blocks[blocks.length - 2], [s2, c2] = blocks[blocks.length - 1];
      if (s1 / c1 <= s2 / c2) break;
      blocks.splice(-2, 2, [s1 + s2, c1 + c2]);
    }
  });
  let i = 0;
  for (const [s, c] of blocks) for (let k = 0; k < c; k++, i++) cy[layer[i]] = s / c + off[i];
}

// Several edges leaving (or entering) one side of a node fan out over the
// middle of that side, in the order of where they go, instead of all
// starting at one point.
function spreadPorts(routed) {
  const sides = new Map(); // "vertex:out|in" → [{pts, i, other}]
  for (const r of routed) {
    const p = r.points, last = p.length - 1;
    const add = (key, i, other) => (sides.get(key) ?? sides.set(key, []).get(key)).push({ p, i, other });
    add(`${r.ends[0]}:out`, 0, p[1][1]);
    add(`${r.ends[1]}:in`, last, p[last - 1][1]);
  }
  for (const list of sides.values()) {
    if (list.length < 2) continue;
    list.sort((a, b) => a.other - b.other);
    const centre = list[0].p[list[0].i][1], span = NODE_H * 0.5;
    list.forEach((e, k) => (e.p[e.i] = [e.p[e.i][0], centre - span / 2 + (span * k) / (list.length - 1)]));
  }
}
