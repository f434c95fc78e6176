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
  const before = await outImg.getAttribute('src');
  const label0 = await page.locator('.widget-slider .widget-readout').first().innerText();
  await outImg.scrollIntoViewIfNeeded();
  await page.screenshot({ path: `${process.env.SHOTS || '.'}/jupyterlab_before.png` });
  await slider.focus();
  for (let i = 0; i < 4; i++) { await page.keyboard.press('ArrowRight'); }
  await slider.dispatchEvent('mouseup');
  await page.waitForTimeout(6000);
  const label1 = await page.locator('.widget-slider .widget-readout').first().innerText();
  const after = await page.locator('.widget-vbox img').first().getAttribute('src');
  await page.screenshot({ path: `${process.env.SHOTS || '.'}/jupyterlab_after.png` });
  // the guided-radius slider: each new radius refines the split once, then redraws
  const radius = page.locator('.widget-slider .noUi-handle').last();
  const r0 = await page.locator('.widget-slider .widget-readout').last().innerText();
  await radius.focus();
  for (let i = 0; i < 2; i++) { await page.keyboard.press('ArrowRight'); }
  await radius.dispatchEvent('mouseup');
  await page.waitForTimeout(8000);
  const r1 = await page.locator('.widget-slider .widget-readout').last().innerText();
  const afterRadius = await page.locator('.widget-vbox img').first().getAttribute('src');
  await page.screenshot({ path: `${process.env.SHOTS || '.'}/jupyterlab_radius.png` });
  const result = { label0, label1, redrawn: before !== after, radius0: r0, radius1: r1, radiusRedrawn: after !== afterRadius };
  console.log(JSON.stringify(result));
  await browser.close();
  if (label0 === label1 || before === after || r0 === r1 || after === afterRadius) process.exit(1);
})().catch(e => { console.error(e); process.exit(1); });
