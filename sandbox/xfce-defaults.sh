#!/bin/sh
# Write Xfce settings into a fresh config dir (never overwrites user changes).
set -eu
CONF="$1/xfce4/xfconf/xfce-perchannel-xml"
mkdir -p "$CONF"

if [ ! -f "$CONF/xfce4-panel.xml" ] && [ -f /etc/xdg/xfce4/panel/default.xml ]; then
    cp /etc/xdg/xfce4/panel/default.xml "$CONF/xfce4-panel.xml"
fi

if [ ! -f "$CONF/xfwm4.xml" ]; then
    cat > "$CONF/xfwm4.xml" <<'XML'
<?xml version="1.0" encoding="UTF-8"?>
<channel name="xfwm4" version="1.0">
  <property name="general" type="empty">
    <property name="use_compositing" type="bool" value="false"/>
    <property name="box_move" type="bool" value="false"/>
  </property>
</channel>
XML
fi

if [ ! -f "$CONF/xfce4-power-manager.xml" ]; then
    cat > "$CONF/xfce4-power-manager.xml" <<'XML'
<?xml version="1.0" encoding="UTF-8"?>
<channel name="xfce4-power-manager" version="1.0">
  <property name="xfce4-power-manager" type="empty">
    <property name="dpms-enabled" type="bool" value="false"/>
    <property name="blank-on-ac" type="int" value="0"/>
  </property>
</channel>
XML
fi
