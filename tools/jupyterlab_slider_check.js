// Open notebook 04 in JupyterLab, run all cells, move the threshold slider, then the guided-radius
// slider (the last one), and check that the figure redraws each time.
// Run through tools/check_jupyterlab.sh (it starts and stops the server). Needs node, playwright-core
// and a Chromium; prints a JSON line and exits non-zero when the figure does not redraw.
const { chromium } = require('playwright-core');
(async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'] });
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  await page.goto(`http://127.0.0.1:${process.env.PORT || 8899}/lab/tree/04_segmentation.ipynb?token=${process.env.TOKEN || 'test'}`);
  await page.waitForSelector('.jp-Notebook', { timeout: 60000 });
  await page.waitForTimeout(5000);
  await page.click('text=Run', { timeout: 10000 });
  await page.click('text=Run All Cells');
  const slider = page.locator('.widget-slider .noUi-handle').first();
  await slider.waitFor({ timeout: 180000 });
  await page.waitForTimeout(3000);
  const outImg = page.locator('.widget-vbox img').first();
  await outImg.waitFor({ timeout: 60000 });
  await outImg.scrollIntoViewIfNeeded();
  await page.screenshot({ path: `${process.env.SHOTS || '.'}/jupyterlab_before.png` });
  const figure = () => page.locator('.widget-vbox img').first().getAttribute('src');
  // press ArrowRight on one slider (first or last), release it, wait for the redraw, screenshot
  async function move(which, presses, wait, shot) {
    const readout = () => page.locator('.widget-slider .widget-readout')[which]().innerText();
    const handle = page.locator('.widget-slider .noUi-handle')[which]();
    const label0 = await readout(), before = await figure();
    await handle.focus();
    for (let i = 0; i < presses; i++) { await page.keyboard.press('ArrowRight'); }
    await handle.dispatchEvent('mouseup');
    await page.waitForTimeout(wait);
    const label1 = await readout(), after = await figure();
    await page.screenshot({ path: `${process.env.SHOTS || '.'}/${shot}` });
    return { label0, label1, redrawn: before !== after };
  }
  const t = await move('first', 4, 6000, 'jupyterlab_after.png');
  // the guided-radius slider (the last): each new radius refines the split once, then redraws
  const r = await move('last', 2, 8000, 'jupyterlab_radius.png');
  console.log(JSON.stringify({ ...t, radius0: r.label0, radius1: r.label1, radiusRedrawn: r.redrawn }));
  await browser.close();
  if (t.label0 === t.label1 || !t.redrawn || r.label0 === r.label1 || !r.redrawn) process.exit(1);
})().catch(e => { console.error(e); process.exit(1); });
