const D = JSON.parse(document.getElementById('data').textContent);
const Q = {macs: 'forward MACs', saved_bytes: 'bytes saved for backward', time_ms: 'measured time (ms)'};
const STOPS = ['#ffffcc','#ffeda0','#fed976','#feb24c','#fd8d3c','#fc4e2a','#e31a1c','#bd0026','#800026'];
const REGION_COLOURS = ['#0b5394','#7f6000','#38761d','#741b47','#134f5c','#990000','#351c75','#b45f06'];
function lum(hex){const c=[1,3,5].map(i=>parseInt(hex.slice(i,i+2),16)/255)
  .map(v=>v<=0.03928?v/12.92:Math.pow((v+0.055)/1.055,2.4));return 0.2126*c[0]+0.7152*c[1]+0.0722*c[2];}
function contrast(a,b){const x=lum(a),y=lum(b);return (Math.max(x,y)+0.05)/(Math.min(x,y)+0.05);}
function textFor(bg){return contrast(bg,'#000000')>=contrast(bg,'#ffffff')?'#000000':'#ffffff';}
function fmt(v){if(v===null||v===undefined)return '';if(typeof v!=='number')return String(v);
  const a=Math.abs(v);if(a>=1e9)return (v/1e9).toFixed(2)+'G';if(a>=1e6)return (v/1e6).toFixed(2)+'M';
  if(a>=1e3)return (v/1e3).toFixed(1)+'k';return Number.isInteger(v)?String(v):v.toFixed(3);}
const regionOf = {};
if (D.plan) D.plan.regions.forEach((r,i)=>r.nodes.forEach(n=>{(regionOf[n]=regionOf[n]||[]).push(i);}));
const savingOps = new Set(D.plan ? D.plan.saving_ops : []);
const shares = D.branches || {};
let total = 0;
function nodeEl(name){
  const n = D.nodes[name]; total++;
  const el = document.createElement('div');
  el.className = 'node' + (n.fork?' fork':'') + (n.join?' join':'');
  el.dataset.name = name; el.tabIndex = 0;
  el.innerHTML = (n.fork?'FORK ':'') + (n.join?'JOIN ':'') + n.op + ' <small>' + name +
    (n.shape? ' · ' + n.shape.join('x') : '') + '</small>';
  if (name in regionOf){el.classList.add('in-region');el.dataset.regions=regionOf[name].join(' ');
    el.style.setProperty('--rc', REGION_COLOURS[regionOf[name][0] % REGION_COLOURS.length]);}
  if (savingOps.has(name)) el.classList.add('saving-op');
  el.addEventListener('click', ()=>select(name, el));
  return el;
}
function build(items, parent){
  for (const it of items){
    if (it.node){parent.appendChild(nodeEl(it.node));continue;}
    const d = document.createElement('details'); d.className='block'; d.dataset.block=it.block;
    const s = document.createElement('summary');
    const count = it.branches.reduce((a,b)=>a+countItems(b.items),0);
    s.textContent = it.block + ' · ' + it.branches.length + ' branches, ' + count + ' nodes';
    const sh = shares[it.fork];
    if (sh){const bars=document.createElement('span');bars.className='bars';
      sh.forEach(b=>{const bar=document.createElement('span');bar.className='bar';bar.title=b.name+': '+
        (100*b.share).toFixed(1)+'% of the fork gradient';bar.style.width=Math.max(2,Math.round(60*b.share))+'px';
        bars.appendChild(bar);});
      s.appendChild(bars);}
    d.appendChild(s);
    const row = document.createElement('div'); row.className='branches';
    for (const b of it.branches){const col=document.createElement('div');col.className='branch';
      const t=document.createElement('div');t.className='bname';t.textContent=b.name;col.appendChild(t);
      build(b.items, col);row.appendChild(col);}
    d.appendChild(row); parent.appendChild(d);
  }
}
function countItems(items){return items.reduce((a,it)=>a+(it.node?1:it.branches.reduce((x,b)=>x+countItems(b.items),0)),0);}
function colour(q){
  const vals = Object.values(D.nodes).map(n=>n[q]).filter(v=>v>0);
  const hi = vals.length?Math.max(...vals):0;
  document.querySelectorAll('.node').forEach(el=>{
    const v = D.nodes[el.dataset.name][q]; let bg='#ffffff';
    if (v>0 && hi>0){const t=Math.max(0,1+Math.log10(v/hi)/4);bg=STOPS[Math.min(STOPS.length-1,Math.round(t*(STOPS.length-1)))];}
    el.style.background=bg; el.style.color=textFor(bg); el.dataset.bg=bg;
  });
  document.getElementById('legend').innerHTML = Q[q] + ': ' + STOPS.map(c=>'<span style="background:'+c+'"></span>').join('') +
    ' (log scale, largest ' + fmt(hi) + ')';
}
function select(name, el){
  document.querySelectorAll('.node.selected').forEach(e=>e.classList.remove('selected'));
  el.classList.add('selected');
  const n = D.nodes[name];
  const rows = [['node',name],['op',n.op],['module',n.module||'-'],['output shape',n.shape?n.shape.join('x'):'-'],
    ['parameters',fmt(n.params)],['forward MACs',fmt(n.macs)],['saved for backward',fmt(n.saved_bytes)+'B'],
    ['time',n.time_ms.toFixed(3)+' ms']];
  if (name in regionOf) rows.push(['checkpoint region', regionOf[name].map(i=>D.plan.regions[i].name).join('; ')]);
  if (savingOps.has(name)) rows.push(['saving op','yes']);
  document.getElementById('row').innerHTML = rows.map(r=>'<tr><th>'+r[0]+'</th><td>'+r[1]+'</td></tr>').join('');
}
function table(){
  const cols=[['name','module'],['type','type'],['shape','output shape'],['params','params'],['macs','MACs'],
    ['backward_macs','backward MACs'],['saved_bytes','saved bytes']];
  const t=document.getElementById('modules');
  t.innerHTML='<thead><tr>'+cols.map(c=>'<th data-key="'+c[0]+'">'+c[1]+'</th>').join('')+'</tr></thead><tbody></tbody>';
  let rows=D.modules.slice(), key=null, dir=1;
  function render(){t.tBodies[0].innerHTML=rows.map(r=>'<tr>'+cols.map(c=>'<td>'+
    (c[0]==='shape'?(r.shape?r.shape.join('x'):''):(typeof r[c[0]]==='number'?r[c[0]].toLocaleString('en'):r[c[0]]))+'</td>').join('')+'</tr>').join('');}
  t.querySelectorAll('th').forEach(th=>th.addEventListener('click',()=>{const k=th.dataset.key;dir=(k===key)?-dir:1;key=k;
    rows.sort((a,b)=>{const x=a[k],y=b[k];return (typeof x==='number'&&typeof y==='number'?x-y:String(x).localeCompare(String(y)))*dir;});
    render();}));
  render();
}
build(D.layout, document.getElementById('graph'));
const collapse = total > D.collapse_nodes;
document.querySelectorAll('details.block').forEach(d=>{d.open=!collapse;});
colour('macs');
document.getElementById('quantity').addEventListener('change', e=>colour(e.target.value));
document.getElementById('expand').addEventListener('click', ()=>document.querySelectorAll('details.block').forEach(d=>{d.open=true;}));
document.getElementById('collapse').addEventListener('click', ()=>document.querySelectorAll('details.block').forEach(d=>{d.open=false;}));
table();
document.body.dataset.readyMs = String(performance.now());
document.body.dataset.ready = '1';
