
(function () {
  for (const fig of document.querySelectorAll('figure[data-plot]')) {
    const svg = fig.querySelector('svg');
    if (!svg) continue;
    const box = svg.getBoundingClientRect();
    let marks = 0, lines = 0, points = 0;
    for (const g of svg.querySelectorAll('g.series')) {
      let drawn = false;
      for (const m of g.querySelectorAll('.mark')) {
        const b = m.getBoundingClientRect();
        if (b.width > 0 && b.height > 0) { marks++; drawn = true; }
      }
      for (const p of g.querySelectorAll('path.line')) {
        if (p.getTotalLength() > 0) { lines++; drawn = true; }
      }
      if (drawn) points += Number(g.getAttribute('data-n') || 0);
    }
    // reference lines (SLOs, knees): drawn when their line has length; off-axis ones are arrows
    const refs = [];
    for (const r of svg.querySelectorAll('.ref')) {
      const line = r.querySelector('line');
      const text = r.tagName.toLowerCase() === 'text' ? r : r.querySelector('text');
      refs.push({label: text ? text.textContent : '', drawn: !!line && line.getTotalLength() > 0});
    }
    const label = (cls) => { const t = svg.querySelector('text.' + cls); return t ? t.textContent : null; };
    const legend = [];
    for (const t of svg.querySelectorAll('g.legend text')) {
      const b = t.getBoundingClientRect();
      if (b.width > 0 && b.height > 0) legend.push(t.textContent);
    }
    fig.setAttribute('data-rendered', JSON.stringify(
      {width: Math.round(box.width), height: Math.round(box.height), marks: marks, lines: lines,
       points: points, refs: refs, legend: legend, xlabel: label('xlabel'), ylabel: label('ylabel')}));
  }
  document.body.setAttribute('data-measured', 'true');
})();
