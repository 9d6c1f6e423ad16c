// SPDX-License-Identifier: GPL-2.0
/*
 * rpi-tryboot: hand the "tryboot" reboot argument to the Raspberry Pi firmware.
 *
 * `systemctl reboot "0 tryboot"` asks the firmware to read tryboot.txt instead of config.txt
 * on the next boot, once (the A/B update trial: a crash or reset afterwards boots config.txt
 * again). The Raspberry Pi kernel does this in its firmware driver; Debian's kernel (mainline)
 * does not, so this module registers a reboot notifier that sets the firmware's reboot flag
 * (mailbox tag 0x00038064, bit 0) when the restart command contains "tryboot". Any other
 * restart is left alone, so the flag is never set by accident.
 */
#include <linux/module.h>
#include <linux/of.h>
#include <linux/reboot.h>
#include <linux/string.h>
#include <soc/bcm2835/raspberrypi-firmware.h>

#define RPI_FIRMWARE_SET_REBOOT_FLAGS 0x00038064
#define RPI_FIRMWARE_REBOOT_FLAG_TRYBOOT BIT(0)

static struct rpi_firmware *firmware;

static int tryboot_notify(struct notifier_block *nb, unsigned long action, void *data)
{
	const char *cmd = data;
	u32 flags = RPI_FIRMWARE_REBOOT_FLAG_TRYBOOT;
	int ret;

	if (action != SYS_RESTART || !cmd || !strstr(cmd, "tryboot"))
		return NOTIFY_DONE;
	ret = rpi_firmware_property(firmware, RPI_FIRMWARE_SET_REBOOT_FLAGS, &flags, sizeof(flags));
	if (ret)
		pr_emerg("rpi-tryboot: the firmware refused the tryboot flag (%d): normal boot next\n", ret);
	else
		pr_emerg("rpi-tryboot: tryboot flag set: tryboot.txt next boot\n");
	return NOTIFY_DONE;
}

static struct notifier_block tryboot_nb = {
	.notifier_call = tryboot_notify,
	.priority = 128, /* before the firmware driver's own reboot handling */
};

static int __init tryboot_init(void)
{
	struct device_node *node;

	node = of_find_compatible_node(NULL, NULL, "raspberrypi,bcm2835-firmware");
	if (!node)
		return -ENODEV;
	firmware = rpi_firmware_get(node);
	of_node_put(node);
	if (!firmware)
		return -EPROBE_DEFER;
	return register_reboot_notifier(&tryboot_nb);
}

static void __exit tryboot_exit(void)
{
	unregister_reboot_notifier(&tryboot_nb);
	rpi_firmware_put(firmware);
}

module_init(tryboot_init);
module_exit(tryboot_exit);
MODULE_DESCRIPTION("Pass the tryboot reboot argument to the Raspberry Pi firmware");
MODULE_LICENSE("GPL");
